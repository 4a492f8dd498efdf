//! The Qlik Sense load balancing module API.
