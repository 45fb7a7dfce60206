//! Not built yet: see the interception issue. This crate exists so the workspace has its final
//! shape and CI covers it from the start.
