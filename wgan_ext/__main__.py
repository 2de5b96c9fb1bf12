"""``python -m wgan_ext ...`` is the ``wgan-ext`` command."""

import sys

from .cli import main

sys.exit(main())
