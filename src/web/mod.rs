//! The web surface (stub until the lead's skeleton lands on main: keep main's on merge).
pub mod rest;
pub mod ws;
