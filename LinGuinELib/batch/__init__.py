"""Cohorts: many studies tracked unattended over Ray (``linguine batch``; parallel ``linguine evaluate``)."""
