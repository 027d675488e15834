//! Interned next-hop addresses.

use super::*;

/// Interned next-hop addresses with reference counts, so a flow slot stores 4 bytes
/// instead of an `IpAddr` and the set stays bounded under churn.
#[derive(Debug)]
pub(super) struct NextHops {
    pub(super) addrs: Vec<(IpAddr, u64)>,
    pub(super) index: HashMap<IpAddr, u32, RandomState>,
    pub(super) free: Vec<u32>,
    pub(super) limit: usize,
}

impl NextHops {
    pub(super) fn acquire(&mut self, addr: IpAddr) -> Result<u32, FlowError> {
        if let Some(&id) = self.index.get(&addr) {
            self.addrs[id as usize].1 += 1;
            return Ok(id);
        }
        let id = if let Some(id) = self.free.pop() {
            self.addrs[id as usize] = (addr, 1);
            id
        } else {
            if self.addrs.len() >= self.limit || self.addrs.len() >= u32::MAX as usize {
                return Err(FlowError::NextHopsFull { limit: self.limit });
            }
            self.addrs.push((addr, 1));
            (self.addrs.len() - 1) as u32
        };
        self.index.insert(addr, id);
        Ok(id)
    }

    pub(super) fn release(&mut self, id: u32) {
        let Some(e) = self.addrs.get_mut(id as usize) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            self.index.remove(&e.0);
            self.free.push(id);
        }
    }

    pub(super) fn addr(&self, id: u32) -> IpAddr {
        self.addrs
            .get(id as usize)
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |e| e.0)
    }
}
