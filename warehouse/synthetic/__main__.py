"""``python -m warehouse.synthetic``: write a synthetic upload tree."""

import sys

from warehouse.synthetic.command import main

if __name__ == "__main__":
    sys.exit(main())
