"""Database migrations (Alembic). One branch per sub-package; ``upgrade heads`` applies all."""
