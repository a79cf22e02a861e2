//! The recency lists the policies are made of: doubly linked lists threaded through one arena,
//! indexed by one hash map, so a lookup is one hash probe and a move between lists is O(1).
//!
//! A key lives on exactly one list of its arena (a policy's window, probation and protected
//! segments, or ARC's resident and ghost lists). Each node carries the entry's weight and the
//! policy's small per-entry fields, never the value.

use std::hash::Hash;

use hashbrown::HashMap;

/// "No node": the end of a list or a free slot's link.
const NIL: u32 = u32::MAX;

/// One list's ends and totals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    head: u32,
    tail: u32,
    pub(crate) len: usize,
    pub(crate) weight: u64,
}

impl Ends {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
        len: 0,
        weight: 0,
    };
}

#[derive(Debug)]
struct Node<K> {
    /// `None` only while the slot is free.
    key: Option<K>,
    prev: u32,
    next: u32,
    list: u8,
    /// A policy's own byte (fits in the node's padding).
    tag: u8,
    weight: u64,
    /// A policy's own per-entry number (an expiry for the volatile policies).
    extra: u64,
}

/// A node's position, as the policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

/// `N` lists over one arena and one index.
#[derive(Debug)]
pub(crate) struct Lists<K, const N: usize> {
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    index: HashMap<K, u32>,
    ends: [Ends; N],
}

impl<K: Hash + Eq + Clone, const N: usize> Lists<K, N> {
    pub(crate) fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            ends: [Ends::EMPTY; N],
        }
    }

    pub(crate) fn ends(&self, list: usize) -> Ends {
        self.ends[list]
    }

    pub(crate) fn find(&self, key: &K) -> Option<(Slot, usize)> {
        let &at = self.index.get(key)?;
        Some((Slot(at), usize::from(self.nodes[at as usize].list)))
    }

    pub(crate) fn weight_of(&self, slot: Slot) -> u64 {
        self.nodes[slot.0 as usize].weight
    }

    pub(crate) fn extra(&self, slot: Slot) -> u64 {
        self.nodes[slot.0 as usize].extra
    }

    pub(crate) fn tag(&self, slot: Slot) -> u8 {
        self.nodes[slot.0 as usize].tag
    }

    pub(crate) fn set_tag(&mut self, slot: Slot, tag: u8) {
        self.nodes[slot.0 as usize].tag = tag;
    }

    pub(crate) fn key(&self, slot: Slot) -> Option<&K> {
        self.nodes[slot.0 as usize].key.as_ref()
    }

    /// The least recently used end of `list`.
    pub(crate) fn tail(&self, list: usize) -> Option<Slot> {
        let at = self.ends[list].tail;
        (at != NIL).then_some(Slot(at))
    }

    /// The next node towards the head.
    pub(crate) fn newer(&self, slot: Slot) -> Option<Slot> {
        let at = self.nodes[slot.0 as usize].prev;
        (at != NIL).then_some(Slot(at))
    }

    /// Adds a key that is on no list, at the head of `list`.
    pub(crate) fn push(&mut self, list: usize, key: K, weight: u64, extra: u64) -> Slot {
        // Callers know the key is absent; were it not, its node is the answer, untouched.
        match self.push_new(list, key, weight, extra) {
            Ok(slot) | Err((slot, _)) => slot,
        }
    }

    /// Adds `key` at the head of `list` unless it is already on a list, in one probe of the
    /// index; a resident key is answered with its node and list, untouched.
    pub(crate) fn push_new(
        &mut self,
        list: usize,
        key: K,
        weight: u64,
        extra: u64,
    ) -> Result<Slot, (Slot, usize)> {
        let vacant = match self.index.entry(key) {
            hashbrown::hash_map::Entry::Occupied(occupied) => {
                let at = *occupied.get();
                return Err((Slot(at), usize::from(self.nodes[at as usize].list)));
            }
            hashbrown::hash_map::Entry::Vacant(vacant) => vacant,
        };
        let node = Node {
            key: Some(vacant.key().clone()),
            prev: NIL,
            next: NIL,
            list: 0,
            tag: 0,
            weight,
            extra,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.nodes[at as usize] = node;
                at
            }
            None => {
                // Arena indices are u32: four billion entries is far past any cache here.
                let at = u32::try_from(self.nodes.len()).unwrap_or(NIL - 1);
                self.nodes.push(node);
                at
            }
        };
        vacant.insert(at);
        self.link_front(list, at);
        Ok(Slot(at))
    }

    /// Moves a node to the head of `list` (its own or another).
    pub(crate) fn move_to(&mut self, slot: Slot, list: usize) {
        self.unlink(slot.0);
        self.link_front(list, slot.0);
    }

    /// Changes a node's weight in place.
    pub(crate) fn set_weight(&mut self, slot: Slot, weight: u64) {
        let node = &mut self.nodes[slot.0 as usize];
        let ends = &mut self.ends[usize::from(node.list)];
        ends.weight = ends.weight - node.weight + weight;
        node.weight = weight;
    }

    /// Takes a node off its list and out of the index, giving back its key.
    pub(crate) fn remove(&mut self, slot: Slot) -> Option<K> {
        self.unlink(slot.0);
        let key = self.nodes[slot.0 as usize].key.take()?;
        self.index.remove(&key);
        self.free.push(slot.0);
        Some(key)
    }

    fn link_front(&mut self, list: usize, at: u32) {
        let ends = &mut self.ends[list];
        let node = &mut self.nodes[at as usize];
        // A policy has at most a handful of lists: the tag fits a byte.
        node.list = u8::try_from(list).unwrap_or(u8::MAX);
        node.prev = NIL;
        node.next = ends.head;
        let weight = node.weight;
        if ends.head != NIL {
            self.nodes[ends.head as usize].prev = at;
        } else {
            ends.tail = at;
        }
        ends.head = at;
        ends.len += 1;
        ends.weight += weight;
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next, list, weight) = {
            let node = &self.nodes[at as usize];
            (node.prev, node.next, usize::from(node.list), node.weight)
        };
        let ends = &mut self.ends[list];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            ends.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            ends.tail = prev;
        }
        ends.len -= 1;
        ends.weight -= weight;
    }
}
