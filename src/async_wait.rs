//! The async waiter thread (issue 19): to come.
