"""``python -m geomol.evaluate sdf=mols.sdf [regressor=PATH]`` (see geomol.cli.evaluate)."""

from geomol.cli.evaluate import main

if __name__ == "__main__":
    main()
