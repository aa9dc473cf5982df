"""Paper scale, CIFAR-100: Table 1 of Kodge et al. (AAAI 2025) on a GPU.

Command (one GPU; cifar-100-python.tar.gz in DATA):

    python -m experiments.run experiments/configs/paper_cifar100.py --data-root DATA --workdir runs/paper_cifar100

The CIFAR-10 recipe (experiments/configs/paper_cifar10.py: VGG11-BN, ResNet18,
ResNet50; 350 epochs SGD; Finetune 5000, SSD 5000/1000, SCRUB 1000/200, SAP
N_trust 1000 with α ∈ {1e4 … 1e6}) on CIFAR-100 with symmetric noise,
asymmetric noise (next class within the true superclass, from the archive's
coarse labels) and hierarchical noise (flips within the superclass). The paper
reports VGG11-BN at 25 % symmetric noise: Vanilla 50.64 ± 0.60, SAP
53.31 ± 0.78, Retrain 63.66; averaged over its CIFAR-100 settings Vanilla
61.47, Finetune 62.23, SSD 61.44, SCRUB 62.79, SAP 63.18.
"""

import dataclasses

from experiments.configs import paper_cifar10


def get_config():
  base = paper_cifar10.get_config()
  setups = tuple(dataclasses.replace(s, dataset="cifar100") for s in base.setups)
  return dataclasses.replace(
    base,
    name="paper_cifar100",
    description="CIFAR-100 at the paper's settings (Table 1)",
    setups=setups,
    noises=(
      "symmetric:0.1",
      "symmetric:0.25",
      "asymmetric:0.1",
      "asymmetric:0.25",
      "hierarchical:0.25",
    ),
  )
