"""Tests of the HTTP routes (``service/routes/``)."""
