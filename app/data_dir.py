"""Where the public measured-run datasets are (`--data-dir`): vTrain, Hagemann et al., MosaicML.

They are not shipped with parasim (`../shared/data` beside a checkout holds them). The folder
is, in order: the one given, `$PARASIM_DATA`, or the first `shared/data` found beside or above
the working folder; otherwise a one-line error names the flag to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

from parasim.simulator.errors import SpecError

DATA_VARIABLE = "PARASIM_DATA"


def data_dir(given: str | Path | None, needs: str) -> Path:
    """The datasets folder holding `needs` (a relative path such as `vtrain`)."""
    if given is not None:
        folder = Path(given)
        if not (folder / needs).exists():
            raise SpecError("--data-dir", str(given), f"has no {needs}",
                            f"the folder holding {needs}/ (a copy of shared/data)")
        return folder
    candidates = [Path(os.environ[DATA_VARIABLE])] if os.environ.get(DATA_VARIABLE) else []
    here = Path.cwd().resolve()
    candidates += [folder / "shared" / "data" for folder in (here, *here.parents)]
    for folder in candidates:
        if (folder / needs).exists():
            return folder
    raise SpecError("--data-dir", None, f"not given, and no shared/data holding {needs}/ "
                    "beside or above this folder", f"--data-dir DIR (the folder holding "
                    f"{needs}/), or set {DATA_VARIABLE}")
