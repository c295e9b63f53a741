"""Every test composes the real configs: register the policy/engine schemas they name first."""

from report.config_schema import register

register()
