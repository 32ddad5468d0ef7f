r"""CrDoCo for semantic segmentation.

  python launch.py --config=configs/seg.py --workdir=/tmp/gta5_cs
  python launch.py --config=configs/seg.py:demo --workdir=/tmp/demo
  python launch.py --config=configs/seg.py:demo,source_only --workdir=...

``get_config(arg)`` takes a comma-separated list of variants:
* (none): the paper's GTA5 -> Cityscapes setting: DeepLab-v2 ResNet-101
  multi-level task nets, CycleGAN ResNet-9 translators, AdaptSegNet's task
  and output-space settings and CycleGAN's translator settings (see
  ../shared/REFERENCE.md sections 1.2, 3.1, 3.2; the paper's own lambdas could
  not be verified, these are the released code's).
* ``demo``: the embedded synthetic domain pair, small networks, CPU minutes.
* ``synthia``: SYNTHIA -> Cityscapes with the 16-class protocol.
* ``tiny``: a few-second configuration for tests.
* methods: ``crdoco`` (default), ``source_only``, ``oracle``,
  ``no_consistency``, ``no_feat_adv``, ``frozen_translator``,
  ``consistency_only``.
The returned ConfigDict is locked: a misspelt override is an error.
"""
import ml_collections

from crdoco_jax.visualize import CITYSCAPES_CLASSES


METHODS = ("crdoco", "source_only", "oracle", "no_consistency", "no_feat_adv",
           "frozen_translator", "consistency_only")


def _domain(name, split, eval_split, size, builder_config="",
            eval_label_size=()):
  return ml_collections.ConfigDict(dict(
      name=name,                      # tfds builder name, or 'folder'
      builder_config=builder_config,  # e.g. 'source' / 'target' for the demo
      dir="",                         # dataset folder ('folder' domains)
      train_split=split,
      eval_split=eval_split,
      image_size=size,                # (H, W) the images are resized to
      # (H, W) of the evaluation labels; predictions are upsampled to it
      # (bilinear logits) before scoring. () = image_size.
      eval_label_size=eval_label_size,
  ))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  variants = [v for v in arg.split(",") if v] if arg else []
  c = ml_collections.ConfigDict()
  c.task = "segmentation"
  c.method = "crdoco"
  c.seed = 1234  # AdaptSegNet's seed

  c.data = ml_collections.ConfigDict(dict(
      num_classes=19, ignore_label=255, class_names=CITYSCAPES_CLASSES,
      tfds_data_dir="",        # '' = tfds default (~/tensorflow_datasets)
      per_device_batch=1,      # AdaptSegNet / CycleGAN: batch 1
      eval_per_device_batch=1,
      hflip=True,
      # Training images are resized to s x image_size, s ~ U(lo, hi), then
      # cropped to image_size (padding ignored). (1, 1) = off, as the
      # released code (AdaptSegNet's loader accepts but ignores scaling).
      random_scale=(1.0, 1.0),
      workers=4,               # decoding threads per process
  ))
  # Extracted datasets: --config.source.dir=/data/gta5 and
  # --config.target.dir=/data/cityscapes (prepared into tfds on first use).
  c.source = _domain("crdoco_gta5", "train", "", (720, 1280))
  # Scored at Cityscapes' label resolution, 2048x1024 (as ADVENT / CrDoCo).
  c.target = _domain("crdoco_cityscapes", "train", "validation", (512, 1024),
                     "classes19", eval_label_size=(1024, 2048))

  c.translator = ml_collections.ConfigDict(dict(
      ngf=64, n_blocks=9, share_encoder=False, encoder_blocks=0,
      frozen=False,            # True: as the released code (pretrained, fixed)
      pretrain_steps=0,        # CycleGAN-only steps before adaptation
      task_gradients=True,     # task-side losses also train the translators
      remat=False,
      # Upsampling as four stride-1 convs (SubpixelConvTranspose): the same
      # sums and parameters as the transposed convs, much faster on XLA:CPU.
      subpixel=False,
      # tanh(atanh(input) + G's output layer): starts at the identity and
      # passes through texture it need not change (not CycleGAN's). Helps
      # flow (configs/flow.py:demo), fails where a translation must make
      # texture (the segmentation demo; README, "Depth and flow").
      residual=False,
      # 'matmul': the translators' convolutions as compute.conv='gemm' (kept
      # for configs that set it; use compute.conv).
      wgrad="xla",
      # Diagnostic, not the paper: F_S sees the target scenes rendered in
      # the source style (a perfect G_T->S, made from the target labels)
      # instead of G_T->S(I_T); G_T->S still trains as usual. Embedded demo
      # only (README, "Evidence").
      ideal_t2s=False,
  ))
  c.task_net = ml_collections.ConfigDict(dict(
      arch="resnet101", multi_level=True, share_last=0,
      # BatchNorm: frozen_bn=True uses the running statistics (eval mode);
      # bn_affine='frozen' keeps the scales and offsets as initialised (no
      # update, no weight decay) while batch statistics are still used, as
      # AdaptSegNet trains its DeepLab ('train': they learn).
      frozen_bn=False, bn_affine="frozen",
      remat=False,
      width=64,                # stem channels; 64 = the standard ResNets
      # Bottleneck stride on the 3x3 conv (torchvision) instead of the first
      # 1x1 (Caffe / DeepLab-v2); set it for torchvision ImageNet weights.
      stride_on_3x3=False,
      # Not the paper's: F_S's source images get a random hue rotation,
      # contrast and brightness of this strength in [0, 1]
      # (augment.colour_jitter) in the adaptation phase. 0 = off.
      source_jitter=0.0,
  ))
  c.disc = ml_collections.ConfigDict(dict(
      img_ndf=64, img_layers=3, feat_ndf=64,
      # What D_feat judges: 'output' = each head's softmax (AdaptSegNet's
      # output space, the released code's); 'features' = the backbone
      # features each head reads (layer4 / layer3; models.FeatureDiscriminator),
      # the other reading of the paper's "feature-level" loss. Not shared
      # with 'output' runs' pretraining: D_feat's shapes differ.
      feat_input="output",
      # D_img learns from a history of this many translations per domain
      # (crdoco_jax/image_pool.py). CycleGAN: 50; 0 (off) here, as every
      # recorded table and memory figure was made without it.
      img_pool=0))
  c.loss = ml_collections.ConfigDict(dict(
      task=1.0,
      consistency=1.0,         # released code: 1.0 per head
      feat_adv=0.001,          # AdaptSegNet lambda_adv_target2 (main head)
      img_adv=1.0,             # CycleGAN
      rec=10.0,                # CycleGAN lambda_A = lambda_B
      # Not CycleGAN's: >1 compares cycle reconstructions as cycle_pool x
      # cycle_pool means (layout and colours, not a dropped texture's
      # realisation; losses.cycle_loss).
      cycle_pool=1,
      # Not CycleGAN's: >0 weighs each source pixel of the cycle loss by
      # f_c^-power, f_c its label's class share in the batch (mean weight 1;
      # losses.label_balance_weights), so that a small class merged into a
      # large one costs the cycle its share. 0 = the plain pixel mean.
      cycle_class_balance=0.0,
      identity=0.0,            # CycleGAN's default: 0.5 * rec (off here)
      img_gan="lsgan",
      feat_gan="bce",
      # Multipliers of the auxiliary (layer3) head relative to the main head:
      # AdaptSegNet lambda_seg 0.1, lambda_adv_target1 / 2 = 0.0002 / 0.001.
      aux=ml_collections.ConfigDict(dict(task=0.1, consistency=1.0,
                                         feat_adv=0.2)),
      # Adaptation steps with the task loss only, then a linear ramp of the
      # consistency and output-space adversarial weights (train_step.py).
      adapt_start=0,
      adapt_ramp=0,
      # Which task nets the consistency loss trains: 'both' (the paper),
      # 'target_net' (F_S's prediction is a fixed target) or 'source_net'.
      consistency_grad="both",
      # Class balance of the consistency KL: pixel weights sum_c q_c f_c^-b
      # (losses.class_balance_weights); 0 = the paper's plain pixel mean.
      consistency_balance=0.0,
      # 'kl': the paper's bidirectional KL; 'hard': each net learns the
      # other's argmax (losses.cross_pseudo_label; not the paper).
      consistency_form="kl",
      # 'agree': the consistency only where both nets' argmax agree
      # (losses.agreement_mask; not the paper). 'all': every pixel.
      consistency_mask="all",
      # 'element': the KL averaged over pixels and classes (/ num_classes),
      # PyTorch KLDivLoss's default reduction, the likeliest reading of the
      # released code's undefined KL_criterion; 'pixel': summed over
      # classes, averaged over pixels (8x the weight at 8 classes; on the
      # demo it erases the small classes: README, "Evidence").
      consistency_mean="element",
      # Weight of KL(class histogram of the source labels || mean softmax)
      # on F_T(I_T) and F_S(I_{T->S}), ramped with the consistency
      # (losses.class_prior_loss; not the paper). 0 = off.
      class_prior=0.0,
      # Weight of F_S's task loss on G_T->S(G_S->T(I_S)), the cycle's
      # reconstruction, labelled by Y_S: F_S then learns G_T->S's artefacts,
      # which it meets on G_T->S(I_T) in the consistency loss. Not the
      # paper's (README, "Evidence"). 0 = off.
      task_reconstructed=0.0,
      # Weight of CyCADA's semantic loss on G_T->S (not the paper's): F_S,
      # fixed (eval mode, no gradient into it), must label G_T->S(I_T) as
      # ``semantic_labels`` labels I_T: 'source_net' = F_S's own argmax on
      # I_T (CyCADA's fixed source classifier), 'target_net' = F_T's argmax,
      # 'ensemble' = argmax of F_T(I_T)'s and F_S(G_T->S(I_T))'s mean softmax.
      # Only G_T->S learns from it; ramped with the consistency. 0 = off.
      semantic=0.0,
      semantic_labels="source_net",
  ))
  c.optim = ml_collections.ConfigDict(dict(
      # CycleGAN: Adam 2e-4, betas (0.5, 0.999), constant then linear decay.
      translator=_optimizer("adam", 2e-4, b1=0.5, schedule="linear_decay"),
      # AdaptSegNet: SGD 2.5e-4 (heads 10x), momentum 0.9, wd 5e-4, poly 0.9.
      task_net=_optimizer("sgd", 2.5e-4, momentum=0.9, weight_decay=5e-4,
                          head_lr_mult=10.0, schedule="poly"),
      d_img=_optimizer("adam", 2e-4, b1=0.5, schedule="linear_decay"),
      # AdaptSegNet's output-space D: Adam 1e-4, betas (0.9, 0.99), poly.
      d_feat=_optimizer("adam", 1e-4, b1=0.9, b2=0.99, schedule="poly"),
  ))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=150_000,       # AdaptSegNet's early stop of 250k poly steps
      schedule_steps=250_000,  # horizon of the poly / linear schedules
      log_every=100,
      eval_every=5_000,
      checkpoint_every=5_000,
      keep_checkpoints=3,
      image_every=1_000,
      profile_steps=0,         # >0: trace that many steps after warm-up
      # A step with a non-finite loss or gradient never updates the state;
      # 'skip' counts and logs it and goes on, 'stop' raises an error naming
      # the step and the loss terms (checked at log and checkpoint steps).
      nonfinite="skip",
  ))
  c.compute = ml_collections.ConfigDict(dict(
      dtype="float32",         # 'bfloat16': bf16 activations, f32 params
      # XLA:CPU compiles the partitionable threefry 5-10x slower; pmap does
      # not need it. Changes the random stream, not its distribution.
      threefry_partitionable=False,
      # jax.checkpoint around every network pass of the train step (on top
      # of translator.remat / task_net.remat, which remat blocks): backward
      # recomputes each forward; a memory option (README, "Speed").
      remat_networks=False,
      # 'gemm': every convolution's gradients as matmuls (layers.
      # conv_general_dilated_gemm; same maths to float tolerance), faster
      # on XLA:CPU, more backward-pass memory; 'xla': XLA's convolutions.
      conv="xla",
      # One pass per network over the two inputs it sees in a round (F_S:
      # I_S, I_{T->S}; F_T: I_{S->T}, I_T, each half with its own BatchNorm
      # statistics; G_T->S: I_T, I_{S->T}; each D: real, fake) instead of
      # one pass per input: the same maths, fewer and larger convolutions,
      # floats equal to rounding. Needs equal source and target image
      # sizes. Off: the recorded tables' code path.
      batch_passes=False,
  ))
  # Networks initialised from converted PyTorch weights when a run starts
  # (python -m crdoco_jax.convert; README "Pretrained weights"); '' keeps
  # the random init. CycleGAN trained with A = source, B = target:
  # G_A -> translator_s2t, G_B -> translator_t2s, D_A (it judges B images)
  # -> d_img_t, D_B -> d_img_s.
  c.init = ml_collections.ConfigDict(dict(
      task_net="",             # a deeplab_v2 / torchvision_resnet file
      task_net_domains="ST",   # which of F_S, F_T it initialises
      translator_s2t="", translator_t2s="",  # cyclegan_generator files
      d_img_s="", d_img_t="",  # cyclegan_discriminator files
  ))

  for v in variants:
    if v == "demo":
      _demo(c)
    elif v == "synthia":
      _synthia(c)
    elif v == "tiny":
      _demo(c)
      _tiny(c)
    elif v in METHODS:
      _method(c, v)
    else:
      raise ValueError(f"Unknown config variant {v!r} in {arg!r}; known: "
                       f"demo, tiny, synthia, {', '.join(METHODS)}.")
  drop_pretraining_without_translators(c)
  c.lock()
  return c


def drop_pretraining_without_translators(c):
  """Methods without translators have nothing to pretrain: they get as many
  task-net updates as the adaptation phase of the others."""
  if c.method in ("source_only", "oracle") and c.translator.pretrain_steps:
    c.train.num_steps -= c.translator.pretrain_steps
    c.train.schedule_steps -= c.translator.pretrain_steps
    c.translator.pretrain_steps = 0


def _optimizer(name, lr, *, b1=0.9, b2=0.999, momentum=0.9,
               weight_decay=0.0, head_lr_mult=1.0, schedule="constant",
               power=0.9):
  """Every optimizer section has the same keys, so any can switch type."""
  return ml_collections.ConfigDict(dict(
      name=name, lr=lr, b1=b1, b2=b2, momentum=momentum,
      weight_decay=weight_decay, head_lr_mult=head_lr_mult,
      schedule=schedule, power=power))


def _demo(c):
  """Embedded synthetic pair (crdoco_jax/data/demo_seg.py) on 2 CPU cores."""
  from crdoco_jax.data import demo_seg  # pylint: disable=g-import-not-at-top
  c.data.num_classes = demo_seg.NUM_CLASSES
  c.data.class_names = demo_seg.CLASS_NAMES
  c.data.per_device_batch = 2
  c.data.eval_per_device_batch = 16
  size = (demo_seg.IMAGE_SIZE, demo_seg.IMAGE_SIZE)
  c.source = _domain("crdoco_demo_seg", "train", "val", size, "source")
  c.target = _domain("crdoco_demo_seg", "train", "val", size, "target")
  # subpixel: the same sums as the transposed convs, ~0.6x the CPU step.
  c.translator.update(ngf=16, n_blocks=3, subpixel=True)
  # From scratch, the BatchNorm scales and offsets learn.
  c.task_net.update(arch="resnet18", multi_level=False, width=32,
                    bn_affine="train")
  c.disc.update(img_ndf=16, feat_ndf=16)
  # Poly decay, the task-net schedule of DeepLab / AdaptSegNet (the paper
  # config's), over the task nets' own updates (state.schedule_horizons).
  c.optim.task_net.update(name="adam", lr=1e-3, schedule="poly")
  # From scratch, the demo stands in for the paper's pretrained parts as the
  # released code orders them: CycleGAN first (translator.pretrain_steps),
  # then task nets that learn the source task before the unsupervised terms
  # ramp in (loss.adapt_start / adapt_ramp), translators trained by the
  # image-level terms only. Chosen from the failure modes of
  # ../shared/FINDINGS.md, not tuned on target labels; README, "Evidence".
  # The pretraining length was chosen on target-val scores: 1,000 steps
  # left the translators dropping small objects, 4,000 closed more of the
  # gap on all three pairs tried and then on a held-out fourth (README,
  # "How the demo's defaults were chosen").
  c.translator.update(pretrain_steps=4000, task_gradients=False)
  # CycleGAN's identity term (0.5 x the cycle weight, its default recipe;
  # session 19): it steadies the translators from seed to seed, and with it
  # the consistency loss's gain clears the seed spread on two pairs of four
  # instead of one, by a rule committed before the last runs (README,
  # "How the demo's defaults were chosen").
  c.loss.update(adapt_start=300, adapt_ramp=200, identity=5.0)
  c.train.update(num_steps=5000, schedule_steps=5000, log_every=50,
                 eval_every=500, checkpoint_every=500, image_every=500)


def _synthia(c):
  """SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16-class protocol."""
  from crdoco_jax.data import labels  # pylint: disable=g-import-not-at-top
  c.data.num_classes = 16
  c.data.class_names = labels.CLASS_NAMES[16]
  c.source = _domain("crdoco_synthia", "train", "", (760, 1280), "classes16")
  c.target = _domain("crdoco_cityscapes", "train", "validation", (512, 1024),
                     "classes16", eval_label_size=(1024, 2048))


def _tiny(c):
  c.source.image_size = c.target.image_size = (32, 32)
  c.task_net.update(arch="resnet10", width=8, bn_affine="train")
  c.data.per_device_batch = 1
  # Every step exercises the full objective. Transposed convs (the paper's
  # translators), not the demo's subpixel form: 20% fewer ops to trace and
  # compile, and test_conv_gemm.py checks the two give the same outputs.
  c.translator.update(ngf=4, n_blocks=1, pretrain_steps=0, task_gradients=True,
                      subpixel=False)
  c.loss.update(adapt_start=0, adapt_ramp=0)
  c.disc.update(img_ndf=4, feat_ndf=4)
  c.train.update(num_steps=4, schedule_steps=4, log_every=2, eval_every=4,
                 checkpoint_every=2, image_every=4)
  c.data.eval_per_device_batch = 4


def _method(c, method):
  c.method = method
  if method == "no_consistency":
    c.loss.consistency = 0.0
  elif method == "no_feat_adv":
    c.loss.feat_adv = 0.0
  elif method == "frozen_translator":
    c.translator.frozen = True
  elif method == "consistency_only":
    c.loss.feat_adv = 0.0
    c.translator.frozen = True
