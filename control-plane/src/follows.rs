//! Slots for live log follows (`?follow=true` and the dashboard's event
//! stream), apart from the connections agents long-poll on: follows may hold at
//! most half of the server's connections, and one client address at most
//! `per_client` of them, so a viewer with many tabs (or a script) never starves
//! agents, webhooks or other viewers. A follow that gets no slot is told so at
//! once (429), rather than waiting.

use std::net::IpAddr;
use std::sync::Arc;

use crate::error::ApiError;
use crate::sync::{Counts, Full};

#[derive(Debug)]
pub struct FollowSlots {
    total: usize,
    per_client: usize,
    held: Arc<Counts<Option<IpAddr>>>,
}

/// One follow's slot, given back when the follow ends (its body is dropped).
#[derive(Debug)]
pub struct FollowSlot {
    held: Arc<Counts<Option<IpAddr>>>,
    client: Option<IpAddr>,
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        self.held.give_back(&self.client);
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
        match self.held.take(&client, self.per_client, self.total) {
            Ok(()) => Ok(FollowSlot {
                held: self.held.clone(),
                client,
            }),
            Err(Full::Key(mine)) => Err(ApiError::TooManyRequests(format!(
                "this address follows {mine} live logs already, the most one client may; close a log view (or a `?follow=true` request) and try again"
            ))),
            Err(Full::All(all)) => Err(ApiError::TooManyRequests(format!(
                "the server follows {all} live logs, the most it keeps open beside its agents; try again shortly, or read the log without follow"
            ))),
        }
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
