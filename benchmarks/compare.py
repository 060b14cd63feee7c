"""Side-by-side comparison: fastbn vs PyTorch vs NumPy vs a parallel copy.

    python benchmarks/compare.py [--norm {batch,layer,group,instance,all} ...] [--quick]
                                 [--json F] [--markdown F] [--plot F.png]

Same as ``python -m fastbn bench``; see ``fastbn.benchmark`` and ``fastbn.benchmark_report``.
"""

import sys

from fastbn.benchmark_report import main

if __name__ == "__main__":
    sys.exit(main())
