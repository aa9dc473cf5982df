"""Paper scale, Clothing1M (real label noise): ResNet50 and ViT-B/16 on a GPU.

Command (one GPU; DATA/train/<class>/*.jpg and DATA/test/<class>/*.jpg; torchvision's
ImageNet weights saved as state dicts of numpy arrays in pretrained/, see below):

    python -m experiments.run experiments/configs/paper_clothing1m.py --data-root DATA --workdir runs/paper_clothing1m

Reproduces the Clothing1M rows of the paper (ResNet50 67.48 → 69.64, ViT-B/16
69.12 → 71.43) with the image-folder loader: the 14 classes as sub-folders of
train/ (the noisy labels) and test/ (the clean test set). The labels are noisy
by nature, so the noise spec is "none": there are no clean training labels,
hence no Retrain and no oracle α; SAP's α and the baselines' settings are
chosen on a 10 % split of the noisy training set (the published ``--use-valset 0.1``).

The published recipe (LabelNoiseRobustness, ``scripts/template_vanilla.sh`` and
``train.py``): ImageNet-pretrained weights (``--load-loc``), SGD with Nesterov
momentum 0.9, lr 1e-2, weight decay 4e-5, batch 512, 10 epochs (its
ReduceLROnPlateau has patience 10, so the rate never drops in 10 epochs: constant
here), and ImageNet-style augmentation (RandomResizedCrop 224 + horizontal flip;
``augment="imagenet"``, `sap_jax.augmentation`).

Pretrained weights (nothing downloads): each setup's ``init_from`` is a path relative
to the working directory, ``WEIGHTS``; write them once with torch installed::

    import numpy as np, torchvision
    for name, fn in (("resnet50", torchvision.models.resnet50), ("vit_b_16", torchvision.models.vit_b_16)):
        sd = fn(weights="IMAGENET1K_V1").state_dict()
        np.savez(f"pretrained/{name}_imagenet.npz", **{k: v.numpy() for k, v in sd.items()})

(`sap_jax.init_from` converts the torchvision names; the 1000-class head is
re-initialised for the 14 classes.) ``--set setup.init_from=PATH`` gives every setup
one file instead.

Caveats: the folder source decodes every image at image_size (224) before the random
crop (the published code crops the original file), and the experiment runner holds the
decoded images in memory (≈ 0.6 MB per 224×224 image), so use a class-balanced subset
of the 1M noisy images (e.g. 64k) or lower image_size with
``--set setup.data_options.image_size=112`` (the ViT then needs its own weights).
"""

from experiments.config import Config, MethodSpec, Setup, TableSpec
from experiments.configs.paper_cifar10 import PAPER_ALPHAS

DATA = {"image_size": 224, "dataset_name": "clothing1m"}

WEIGHTS = {
  "resnet50": "pretrained/resnet50_imagenet.npz",
  "vit_b16": "pretrained/vit_b_16_imagenet.npz",
}
"""torchvision ImageNet weights of each setup (state dicts as .npz), relative to the cwd."""

TRAIN = {
  "epochs": 10,
  "batch_size": 512,
  "learning_rate": 1e-2,
  "momentum": 0.9,
  "nesterov": True,
  "weight_decay": 4e-5,
  "schedule": "constant",
  "eval_every": 1,
  "augment": "imagenet",
}


def get_config() -> Config:
  return Config(
    name="paper_clothing1m",
    description="Clothing1M (real label noise) at the paper's settings",
    version=2,
    setups=(
      Setup(
        dataset="folder",
        model="resnet50",
        model_kwargs={"stem": "imagenet"},
        data_options=DATA,
        label="ResNet50",
        init_from=WEIGHTS["resnet50"],
      ),
      Setup(
        dataset="folder",
        model="vit_b16",
        data_options=DATA,
        label="ViT-B/16",
        init_from=WEIGHTS["vit_b16"],
      ),
    ),
    noises=("none",),
    train=TRAIN,
    methods=(
      MethodSpec("vanilla"),
      MethodSpec("finetune", {"n_retain": 5000}),
      MethodSpec("ssd", {"n_retain": 5000, "n_forget": 1000}),
      MethodSpec("scrub", {"n_retain": 1000, "n_forget": 200}),
      MethodSpec("sap", {"n_trusted": 1000, "alphas": PAPER_ALPHAS}),
    ),
    table=TableSpec(rows=("method",), columns=("setup",), reference_rows=(), oracle_rows=False),
    oracle=False,
    plots=("alpha_curve",),
  )
