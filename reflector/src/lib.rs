//! The branch reflector: a site cache in front of the seed (see the reflector issue).
