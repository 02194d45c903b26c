import sys

from fieldline.cli import main

sys.exit(main())
