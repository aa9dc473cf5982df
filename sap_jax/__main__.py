"""`python -m sap_jax` runs the `sap-jax` command line."""

import sys

from sap_jax.cli import main

sys.exit(main())
