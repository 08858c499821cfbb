//! Per-client budgets of a node-wide resource (open connections, buffered request-body bytes):
//! each client may hold at most its own cap, and all clients together at most the node's, so no
//! one client can take what the others need.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex, PoisonError},
};

/// The client a connection's peer address counts as: an IPv4 address, or an IPv6 address's /64
/// (one host commonly holds a whole /64, so counting single IPv6 addresses would give it
/// billions of budgets). IPv4-mapped IPv6 addresses count as the IPv4 address.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client of requests that did not come over a connection (the router called in-process).
pub(crate) const IN_PROCESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Which cap a request for more ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exhausted {
    /// The client holds its whole share.
    Client,
    /// All clients together hold the node's whole budget.
    Node,
}

/// Amounts held per client and in all, under two caps.
pub(crate) struct ClientBudget {
    per_client_max: usize,
    total_max: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// Only clients holding something: an entry is removed when its amount returns to 0.
    per_client: HashMap<IpAddr, usize>,
}

impl ClientBudget {
    pub(crate) fn new(per_client_max: usize, total_max: usize) -> Arc<Self> {
        Arc::new(Self { per_client_max, total_max, held: Mutex::default() })
    }

    /// An empty share for `client` (see [`client_key`]), to grow as the client uses more.
    pub(crate) fn share(self: &Arc<Self>, client: IpAddr) -> Share {
        Share { budget: self.clone(), client, amount: 0 }
    }

    /// A share of `amount` for `client`, if both caps allow it.
    pub(crate) fn take(self: &Arc<Self>, client: IpAddr, amount: usize) -> Result<Share, Exhausted> {
        let mut share = self.share(client);
        share.grow(amount)?;
        Ok(share)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts are updated in single statements, so a panic elsewhere leaves them whole.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, client: IpAddr, amount: usize) -> Result<(), Exhausted> {
        let mut held = self.lock();
        let mine = held.per_client.get(&client).copied().unwrap_or(0);
        if mine.saturating_add(amount) > self.per_client_max {
            return Err(Exhausted::Client);
        }
        if held.total.saturating_add(amount) > self.total_max {
            return Err(Exhausted::Node);
        }
        held.total += amount;
        *held.per_client.entry(client).or_insert(0) += amount;
        Ok(())
    }

    fn release(&self, client: IpAddr, amount: usize) {
        let mut held = self.lock();
        held.total = held.total.saturating_sub(amount);
        if let Some(mine) = held.per_client.get_mut(&client) {
            *mine = mine.saturating_sub(amount);
            if *mine == 0 {
                held.per_client.remove(&client);
            }
        }
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.lock().per_client.len()
    }
}

/// What one client holds of a [`ClientBudget`]; given back when dropped.
pub(crate) struct Share {
    budget: Arc<ClientBudget>,
    client: IpAddr,
    amount: usize,
}

impl Share {
    /// Takes `amount` more, or nothing if a cap would be passed.
    pub(crate) fn grow(&mut self, amount: usize) -> Result<(), Exhausted> {
        self.budget.add(self.client, amount)?;
        self.amount += amount;
        Ok(())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.amount > 0 {
            self.budget.release(self.client, self.amount);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        client_key(s.parse().unwrap())
    }

    #[test]
    fn a_client_is_capped_without_touching_another() {
        let budget = ClientBudget::new(2, 10);
        let a1 = budget.take(ip("10.0.0.1"), 1).unwrap();
        let _a2 = budget.take(ip("10.0.0.1"), 1).unwrap();
        assert_eq!(budget.take(ip("10.0.0.1"), 1).err(), Some(Exhausted::Client));
        let _b = budget.take(ip("10.0.0.2"), 2).unwrap();
        drop(a1);
        let _a3 = budget.take(ip("10.0.0.1"), 1).unwrap();
    }

    #[test]
    fn the_node_cap_holds_across_clients_and_is_given_back() {
        let budget = ClientBudget::new(4, 5);
        let a = budget.take(ip("10.0.0.1"), 4).unwrap();
        let mut b = budget.share(ip("10.0.0.2"));
        b.grow(1).unwrap();
        assert_eq!(b.grow(1), Err(Exhausted::Node));
        assert_eq!(budget.take(ip("10.0.0.3"), 1).err(), Some(Exhausted::Node));
        drop(a);
        b.grow(3).unwrap();
        assert_eq!(b.grow(1), Err(Exhausted::Client));
        drop(b);
        assert_eq!(budget.clients(), 0, "clients holding nothing are forgotten");
        let _all = budget.take(ip("10.0.0.3"), 4).unwrap();
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::2"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        let budget = ClientBudget::new(1, 10);
        let _one = budget.take(ip("2001:db8::1"), 1).unwrap();
        assert_eq!(budget.take(ip("2001:db8::2"), 1).err(), Some(Exhausted::Client));
    }
}
