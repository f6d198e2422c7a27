//! Hook families: connection lifecycle (`conn`), bytes on connections (`data`), processes
//! (`proc`).
mod conn;
mod data;
mod proc;
