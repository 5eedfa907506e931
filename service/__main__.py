"""``python -m service``: the same as ``ld4mrec-serve``."""

import sys

from service.cli import main

sys.exit(main())
