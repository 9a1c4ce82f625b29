"""The plugins import their shared helpers as ansible_collections.mcpops.deploy.plugins.plugin_utils,
as Ansible loads them; scripts/setup.sh links the checkout there (.cache/collections)."""

from __future__ import annotations

import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / ".cache" / "collections"
assert (COLLECTIONS / "ansible_collections" / "mcpops" / "deploy").exists(), "run scripts/setup.sh first"
sys.path.insert(0, str(COLLECTIONS))
