"""``python -m edgeclf.select``: calibrate the cost model on this host (see calibration.main)."""

import sys

from edgeclf.select.calibration import main

sys.exit(main())
