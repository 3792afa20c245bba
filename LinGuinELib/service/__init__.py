"""The engine service (``linguine serve``), its wire protocol, client and local subprocess launcher."""
