//! A FIFO that keeps its first element inline.
//!
//! A connection almost always has at most one request waiting for its response; pipelining is
//! rare. A `VecDeque` would allocate room for four on the first request and keep it for the
//! life of the connection, which at 10,000 idle keep-alive connections was most of the agent's
//! heap.
use std::collections::VecDeque;

/// First-in, first-out; allocates only when more than one element waits.
#[derive(Debug)]
pub struct Fifo<T> {
    /// The oldest element. Invariant: `None` only when `rest` is empty.
    head: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo { head: None, rest: VecDeque::new() }
    }
}

impl<T> Fifo<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Appends at the back.
    pub fn push_back(&mut self, v: T) {
        if self.head.is_none() {
            self.head = Some(v);
        } else {
            self.rest.push_back(v);
        }
    }

    /// Removes the oldest element.
    pub fn pop_front(&mut self) -> Option<T> {
        let v = self.head.take()?;
        self.head = self.rest.pop_front();
        Some(v)
    }

    /// Every element, oldest first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.head.iter_mut().chain(self.rest.iter_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_allocates_only_past_one() {
        let mut f = Fifo::default();
        assert!(f.is_empty());
        f.push_back(1);
        assert_eq!(f.rest.capacity(), 0, "one element stays inline");
        f.push_back(2);
        f.push_back(3);
        assert_eq!(f.len(), 3);
        f.iter_mut().for_each(|x| *x *= 10);
        assert_eq!(f.pop_front(), Some(10));
        f.push_back(4);
        assert_eq!(f.pop_front(), Some(20));
        assert_eq!(f.pop_front(), Some(30));
        assert_eq!(f.pop_front(), Some(4));
        assert_eq!(f.pop_front(), None);
        assert!(f.is_empty());
    }
}
