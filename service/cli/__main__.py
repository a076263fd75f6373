"""``python -m service.cli``: the ``provisioner`` command without its console script."""

from __future__ import annotations

import sys

from service.cli import main

sys.exit(main())
