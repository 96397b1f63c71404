import sys

from agentkube.cli import main

sys.exit(main())
