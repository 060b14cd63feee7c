"""Side-by-side comparison: fastbn vs PyTorch vs NumPy vs a parallel copy.

    python benchmarks/compare.py [--quick] [--json F] [--markdown F] [--plot F.png]

Same as ``python -m fastbn bench``; see ``fastbn.benchmark``.
"""

import sys

from fastbn.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
