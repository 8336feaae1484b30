//! Slots for live log follows (`?follow=true` and the dashboard's event
//! stream), apart from the connections agents long-poll on: follows may hold at
//! most half of the server's connections, and one client address at most
//! `per_client` of them, so a viewer with many tabs (or a script) never starves
//! agents, webhooks or other viewers. A follow that gets no slot is told so at
//! once (429), rather than waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::error::ApiError;

#[derive(Debug)]
pub struct FollowSlots {
    total: usize,
    per_client: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_client: HashMap<Option<IpAddr>, usize>,
}

/// One follow's slot, given back when the follow ends (its body is dropped).
#[derive(Debug)]
pub struct FollowSlot {
    held: Arc<Mutex<Held>>,
    client: Option<IpAddr>,
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut held = crate::sync::lock(&self.held);
        held.total = held.total.saturating_sub(1);
        if let Some(count) = held.by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.by_client.remove(&self.client);
            }
        }
    }
}

impl FollowSlots {
    /// Follows for a server of `max_connections`, `per_client` from one address.
    pub fn new(max_connections: usize, per_client: usize) -> FollowSlots {
        FollowSlots {
            total: (max_connections / 2).max(1),
            per_client: per_client.max(1),
            held: Arc::default(),
        }
    }

    pub fn take(&self, client: Option<IpAddr>) -> Result<FollowSlot, ApiError> {
        let mut held = crate::sync::lock(&self.held);
        let mine = held.by_client.get(&client).copied().unwrap_or(0);
        if mine >= self.per_client {
            return Err(ApiError::TooManyRequests(format!(
                "this address follows {mine} live logs already, the most one client may; close a log view (or a `?follow=true` request) and try again"
            )));
        }
        if held.total >= self.total {
            return Err(ApiError::TooManyRequests(format!(
                "the server follows {} live logs, the most it keeps open beside its agents; try again shortly, or read the log without follow",
                held.total
            )));
        }
        held.total += 1;
        *held.by_client.entry(client).or_default() += 1;
        Ok(FollowSlot {
            held: self.held.clone(),
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_are_capped_per_client_and_in_all_and_given_back() {
        let slots = FollowSlots::new(8, 3);
        let one = Some("10.0.0.1".parse().unwrap());
        let two = Some("10.0.0.2".parse().unwrap());
        let mine: Vec<_> = (0..3).map(|_| slots.take(one).unwrap()).collect();
        assert!(slots.take(one).is_err(), "per client");
        let _theirs = slots.take(two).unwrap();
        assert!(slots.take(None).is_err(), "half of 8 in all");
        drop(mine);
        assert!(slots.take(one).is_ok(), "given back");
    }
}
