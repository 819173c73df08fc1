from __future__ import annotations

import fleetwarden.firmware.models  # noqa: F401  (registers the firmware tables)
