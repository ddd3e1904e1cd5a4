//! The embedded synthetic datastore.
