"""Signed firmware and OTA updates (control C6; C5 for signing keys)."""
