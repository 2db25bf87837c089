//! Core-to-core calls that are not client requests. (being written)

pub enum InternalMsg {}
