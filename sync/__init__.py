"""MISP indicator sync for Wazuh: configuration, logging and the IOC store."""

__version__ = "0.1.0"
