"""``python -m geomol.generate ckpt=PATH num_molecules=N output=mols.sdf [condition.gap=7.0]`` (see geomol.cli.generate)."""

from geomol.cli.generate import main

if __name__ == "__main__":
    main()
