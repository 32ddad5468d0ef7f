"""Small demo datasets for tests."""


def build_small_demo(module, root: str, train: int, val: int) -> str:
  """Generates both domains of a demo module (``demo_seg``, ``demo_depth``,
  ``demo_flow``) under ``root`` with ``train``/``val`` examples per split."""
  sizes = dict(module.SPLIT_SIZES)
  module.SPLIT_SIZES.update(train=train, val=val)
  try:
    for domain in module.DOMAINS:
      module.build(domain, root)
  finally:
    module.SPLIT_SIZES.update(sizes)
  return root
