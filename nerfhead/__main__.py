import sys

from nerfhead.cli import main

sys.exit(main())
