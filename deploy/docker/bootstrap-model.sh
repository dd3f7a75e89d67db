#!/bin/sh
# First bring-up (compose's model-bootstrap service, the chart's bootstrap Job; installed in the trainer image as
# postlens-bootstrap-model): a model repository with no version of the entry model leaves Triton unready and the
# workers waiting, so the seed checkpoint is exported as its first version. Does nothing once a version exists.
#
#   SEED_CHECKPOINT  a trainer.train checkpoint folder, in the checkpoints volume so retraining fine-tunes from it
#   SEED_URL         optional: a .tar.gz of such a folder, unpacked into SEED_CHECKPOINT when that is missing
#   EXPORT_ARGS      optional: more trainer.export arguments
# The repository and the model name are PostLens settings (POSTLENS_MODEL_REPOSITORY, POSTLENS_TRITON_MODEL).
set -eu
seed="${SEED_CHECKPOINT:?SEED_CHECKPOINT names the seed checkpoint folder}"
model_root="$(python -c 'from postlens.settings import get_settings as g; s = g(); print(s.model_repository / s.triton_model)')"
if ls "$model_root" 2>/dev/null | grep -qx '[0-9][0-9]*'; then
  echo "$model_root has a version already: nothing to bootstrap"
  exit 0
fi
if [ ! -f "$seed/config.yaml" ] && [ -n "${SEED_URL:-}" ]; then
  echo "fetching the seed checkpoint from $SEED_URL into $seed"
  # Unpacked beside the seed, then renamed: a fetch cut short leaves no half a checkpoint that looks whole. A
  # checkpoint is files and folders only; anything else, or a path leading out, refuses the archive. Written out
  # because tarfile's filter="data" needs Python 3.11.4 and the images' Debian Python is 3.11.2.
  python - "$SEED_URL" "$seed" <<'PY'
import os, shutil, sys, tarfile, tempfile, urllib.request
url, seed = sys.argv[1], os.path.abspath(sys.argv[2])
os.makedirs(os.path.dirname(seed), exist_ok=True)
unpacked = tempfile.mkdtemp(prefix=".seed-", dir=os.path.dirname(seed))
try:
    with urllib.request.urlopen(url, timeout=60) as response, tarfile.open(fileobj=response, mode="r|gz") as tar:
        for member in tar:
            inside = os.path.realpath(os.path.join(unpacked, member.name))
            if not (member.isfile() or member.isdir()) or os.path.commonpath([unpacked, inside]) != unpacked:
                sys.exit(f"{url}: refusing {member.name!r}: a checkpoint archive holds only files and folders")
            tar.extract(member, unpacked, set_attrs=False)
except BaseException:
    shutil.rmtree(unpacked)
    raise
if os.path.isdir(seed):
    os.rmdir(seed)  # an empty folder made for it (a volume's mount point keeps its parent)
os.rename(unpacked, seed)
PY
fi
if [ ! -f "$seed/config.yaml" ]; then
  echo "no version in $model_root and no seed checkpoint at $seed: copy a trainer.train checkpoint folder there," \
       "or set SEED_URL to a .tar.gz of one (deploy/README.md, first bring-up)" >&2
  exit 1
fi
# The running Tritons poll the repository and load the new version themselves.
# shellcheck disable=SC2086  # EXPORT_ARGS is a list of arguments
exec python -m trainer.export --model "$seed" --no-load ${EXPORT_ARGS:-}
