"""Small PyTorch networks in the layouts ``crdoco_jax/convert.py`` reads,
for the conversion tests only (written for these tests from the published
architectures' structure; torch is a test-only dependency).

* ``DeepLab``: a ResNet with AdaptSegNet's DeepLab-v2 structure (stride 8,
  layer3 / layer4 dilated 2 / 4, ``Classifier_Module`` heads ``layer5`` /
  ``layer6``), or torchvision's key names and stride placement plus an
  ImageNet ``fc``.
* ``ResnetGenerator`` / ``NLayerDiscriminator``: CycleGAN's ``model.N``
  sequential layouts with parameter-free instance norm.
"""
import torch
from torch import nn


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, dilation, downsample,
               stride_on_3x3):
    super().__init__()
    s1, s3 = (1, stride) if stride_on_3x3 else (stride, 1)
    self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, s3, dilation, dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None
                           else self.downsample(x)))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, dilation, downsample,
               stride_on_3x3):
    del stride_on_3x3  # the first 3x3 conv strides either way
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + (x if self.downsample is None
                           else self.downsample(x)))


class ClassifierModule(nn.Module):
  """ASPP: 3x3 convs dilated 6/12/18/24. ``first2``: AdaptSegNet's
  published forward, which returns after adding the second branch."""

  def __init__(self, inplanes, num_classes, first2=False):
    super().__init__()
    self.first2 = first2
    self.conv2d_list = nn.ModuleList(
        nn.Conv2d(inplanes, num_classes, 3, 1, r, r) for r in (6, 12, 18, 24))

  def forward(self, x):
    convs = self.conv2d_list[:2] if self.first2 else self.conv2d_list
    return sum(conv(x) for conv in convs)


class DeepLab(nn.Module):
  """Returns ``{'feat4': layer4 output, 'main', 'aux'}`` (heads at stride
  8, not upsampled)."""

  def __init__(self, block, counts, width=8, num_classes=None,
               multi_level=False, stride_on_3x3=False, first2=False,
               imagenet_fc=False):
    super().__init__()
    self.inplanes, self.stride_on_3x3 = width, stride_on_3x3
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    self.layer1 = self._layer(block, width, counts[0], 1, 1)
    self.layer2 = self._layer(block, 2 * width, counts[1], 2, 1)
    self.layer3 = self._layer(block, 4 * width, counts[2], 1, 2)
    self.layer4 = self._layer(block, 8 * width, counts[3], 1, 4)
    c3, c4 = 4 * width * block.expansion, 8 * width * block.expansion
    self.multi_level = multi_level
    if num_classes and multi_level:  # ResNetMulti
      self.layer5 = ClassifierModule(c3, num_classes, first2)
      self.layer6 = ClassifierModule(c4, num_classes, first2)
    elif num_classes:  # Res_Deeplab
      self.layer5 = ClassifierModule(c4, num_classes, first2)
    if imagenet_fc:
      self.fc = nn.Linear(c4, 10)

  def _layer(self, block, planes, n, stride, dilation):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride,
                    bias=False),
          nn.BatchNorm2d(planes * block.expansion))
    blocks = [block(self.inplanes, planes, stride, dilation, downsample,
                    self.stride_on_3x3)]
    self.inplanes = planes * block.expansion
    blocks += [block(self.inplanes, planes, 1, dilation, None,
                     self.stride_on_3x3) for _ in range(1, n)]
    return nn.Sequential(*blocks)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    x3 = self.layer3(self.layer2(self.layer1(x)))
    x4 = self.layer4(x3)
    out = {"feat4": x4}
    if self.multi_level:
      out.update(aux=self.layer5(x3), main=self.layer6(x4))
    elif hasattr(self, "layer5"):
      out["main"] = self.layer5(x4)
    return out


class ResnetBlock(nn.Module):

  def __init__(self, dim, dropout):
    super().__init__()
    layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3),
              nn.InstanceNorm2d(dim), nn.ReLU(True)]
    layers += [nn.Dropout(0.5)] if dropout else []
    layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3),
               nn.InstanceNorm2d(dim)]
    self.conv_block = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv_block(x)


class ResnetGenerator(nn.Module):

  def __init__(self, ngf=4, n_blocks=2, dropout=False):
    super().__init__()
    m = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf),
         nn.ReLU(True)]
    for mult in (1, 2):
      m += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1),
            nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
    m += [ResnetBlock(4 * ngf, dropout) for _ in range(n_blocks)]
    for mult in (4, 2):
      m += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, 1),
            nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
    m += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    self.model = nn.Sequential(*m)

  def forward(self, x):
    return self.model(x)


class NLayerDiscriminator(nn.Module):

  def __init__(self, ndf=4, n_layers=3):
    super().__init__()
    m = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers + 1):
      prev, mult = mult, min(2 ** n, 8)
      m += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1),
            nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    m += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    self.model = nn.Sequential(*m)

  def forward(self, x):
    return self.model(x)


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random weights and BatchNorm affine / running statistics, eval mode."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, std=(1.0 / m.weight[0].numel()) ** 0.5)
        if m.bias is not None:
          nn.init.normal_(m.bias, std=0.1)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  return model.eval()


def state_dict(model: nn.Module, prefix: str = ""):
  """``{prefix + key: float32 NumPy array}``, as the converters take."""
  return {prefix + k: v.detach().numpy() for k, v in
          model.state_dict().items()}
