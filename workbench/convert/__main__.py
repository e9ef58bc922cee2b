"""python -m workbench.convert SRC_DIR OUT_DIR: a local HF XLNet directory -> a workbench checkpoint."""

from workbench.convert.xlnet import main

main()
