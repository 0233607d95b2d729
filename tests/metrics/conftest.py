from pathlib import Path

import pytest

from geomol.data.qm9 import QM9


@pytest.fixture(scope="session")
def qm9_fixture(tmp_path_factory):
    """The 400 real QM9 molecules of tests/fixtures/qm9 with RDKit bonds and formal charges."""
    source = Path(__file__).parents[1] / "fixtures" / "qm9"
    dataset = QM9(root=tmp_path_factory.mktemp("qm9"), source=source, with_bonds=True)
    dataset.ensure_bonds()
    return [dataset[k] for k in range(len(dataset))]
