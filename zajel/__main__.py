import sys

from zajel.cli import main

sys.exit(main())
