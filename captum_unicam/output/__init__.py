"""Everything that writes files: reports, tables, figures, and safe publishing of them."""
