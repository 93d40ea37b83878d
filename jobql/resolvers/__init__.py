"""Resolvers: each translates between GraphQL and the job layer, nothing more."""
