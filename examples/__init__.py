"""Kinds of job written outside jobql, as a user of jobql would write them."""
