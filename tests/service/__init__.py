"""Tests of the online service (mirroring ``service/``)."""
