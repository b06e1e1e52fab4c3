#!/bin/bash
# Builds .devdeps/ (hydra-core, omegaconf, antlr4 runtime: pure Python) from the packages installed
# on this workstation, for device calls (the device machine has no Hydra). No download: the
# installed copies are the versions the tests ran with. Run from the repository root; ~4 MB.
set -e
rm -rf .devdeps && mkdir -p .devdeps
python - <<'PY'
import os, shutil
import antlr4, hydra, omegaconf
for mod in (hydra, omegaconf, antlr4):
    src = os.path.dirname(mod.__file__)
    shutil.copytree(src, os.path.join(".devdeps", os.path.basename(src)),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
print("copied hydra", hydra.__version__, "omegaconf", omegaconf.__version__, "into .devdeps/")
PY
du -sh .devdeps
