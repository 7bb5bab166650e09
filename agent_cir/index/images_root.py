"""The images folder an index names (meta.json ``images_dir``) checked before anything reads files under it.

The manifest's paths are confined to that folder (manifest.check_gallery_path), so the folder is what a forged
meta.json would aim: ``images_dir: /home/me/.ssh`` with manifest ids ``id_rsa`` would make search return, and the
demo serve, a user's keys. A build writes ``images_dir`` as the resolved absolute path of the gallery, so
anything else is refused: a relative path, ``.``/``..`` parts, a control character, the file system's root, a
system folder, the home folder itself, or a folder inside one of the home folder's credential stores.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from agent_cir.errors import AgentCirError

SYSTEM_FOLDERS = frozenset(
    {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var"}
)
"""Never a gallery themselves (a gallery may lie below some, e.g. /var/data/photos, but not /etc or /proc)."""
CLOSED_TREES = ("/etc", "/proc", "/sys", "/dev", "/boot")
"""Nothing under these is a photo gallery."""
CREDENTIAL_STORES = (".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".password-store", ".config/gcloud", ".local/share/keyrings")
"""Folders of the home folder that hold secrets: never an images folder, nor inside one."""


class ForgedImagesDirError(AgentCirError):
    """An index names an images folder no build would have written."""


def images_dir_problem(value: object, home: str | None = None) -> str | None:
    """Why ``value`` (meta.json's ``images_dir``) cannot be an index's images folder, or None when it can."""
    if not isinstance(value, str) or not value:
        return "is not a folder path"
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        return "holds a control character"
    path = PurePosixPath(value)
    if not path.is_absolute():
        return "is not an absolute path (a build records the resolved gallery folder)"
    if os.path.normpath(value) != value:
        return "is not a normalised path (it has '.', '..' or empty parts)"
    if str(path) in SYSTEM_FOLDERS:
        return "is a system folder"
    if any(path == PurePosixPath(tree) or PurePosixPath(tree) in path.parents for tree in CLOSED_TREES):
        return "lies in a system folder"
    home = home if home is not None else os.path.expanduser("~")
    if home and home != "/":
        home_path = PurePosixPath(home)
        if path == home_path:
            return "is the home folder itself"
        for store in CREDENTIAL_STORES:
            secret = home_path / store
            if path == secret or secret in path.parents:
                return f"lies in {secret}, a folder of credentials"
    return None


def checked_images_dir(meta: dict, index_dir: Path | str) -> Path:
    """meta.json's ``images_dir`` as a Path, or a ForgedImagesDirError saying what is wrong and what to do."""
    value = meta.get("images_dir")
    problem = images_dir_problem(value)
    if problem is not None:
        shown = repr(value)[:160]
        raise ForgedImagesDirError(
            f"index {index_dir}: its meta.json names the images folder {shown}, which {problem}; no build writes "
            "that, so the index was edited or forged and is not opened (it could make search return files outside "
            "any gallery). Rebuild it: agent-cir index <images folder> --out <new folder>"
        )
    return Path(str(value))
