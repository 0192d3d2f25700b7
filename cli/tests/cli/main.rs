//! meshctl as users and programs run it: the real binary, its exit codes and its output.

#![allow(clippy::unwrap_used)]

mod commands;
mod dev;
