import sys

from xacthuc.cli.main import main

sys.exit(main())
