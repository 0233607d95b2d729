"""Train any geomol model on any data set: ``python train.py model=dimenetpp data=qm9 data.target=homo``."""

from geomol.cli.train import main

if __name__ == "__main__":
    main()
